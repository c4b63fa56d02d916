"""Companion trainer: MobileCLIP students on reinforced shards."""
