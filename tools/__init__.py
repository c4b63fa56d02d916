"""Developer tools that are not part of the data path (rebuilding the bundled sample shards)."""
