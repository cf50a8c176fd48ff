"""Stage `finetune`: initialisations, frozen features, protocols (linear, kNN, few-shot, full fine-tune) and
ELFIS, for every downstream dataset."""
