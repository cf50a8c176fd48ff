"""Where candidate images come from: the candidate plan, generation (stage `generate`), pool indexing
(stage `pool_index`) and retrieval (stage `retrieve`)."""
