"""The data contract in code: raw and reinforced shards, run folder, config.json, teacher slices, storage."""
