"""Looking at reinforced shards: the validator, the overview and figures behind `inspect` and the notebook."""
