"""The model kinds: XGBoost (tabular), LSTM with attention and Transformer encoder (windows of
feature rows, PyTorch), and ensembles of them. ``factory`` builds any of them from its config."""
