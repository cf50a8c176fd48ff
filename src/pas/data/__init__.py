"""Labelled downstream datasets (parquet, ImageFolder, CSV), their splits, and the offline sample data
(stage `sample_data`). Shared by curation (decontamination), ssl (kNN monitor) and transfer."""
