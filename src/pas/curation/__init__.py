"""From candidates to the curated set: embed, filter, near-duplicates and decontamination, balance, dedup
(the stage), the dataset report and export."""
