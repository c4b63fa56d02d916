"""The reinforcement job: raw DataComp shards in, DataCompDR-style reinforced shards out."""
