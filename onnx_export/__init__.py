"""``kubetrade.onnx_export``: research and model building, offline from the trading path.

Datasets and labels, XGBoost/LSTM/Transformer/ensemble training, ONNX export with a parity check,
walk-forward validation and hyper-parameter search; trained models are registered in the model
store (``kubetrade.modelstore``) that inference reads. ``kubetrade train|validate|export|model``
(``kubetrade.cli``) are its commands. It imports the core and no other component.
"""
