"""The ground every phase stands on: params and typed configs, the stage runner, MLflow tracking, machine
settings (PAS_* env), shards and manifests, hashing, iteration helpers. Imports no phase."""
