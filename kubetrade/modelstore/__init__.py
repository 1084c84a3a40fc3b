"""``kubetrade.modelstore``: models as the trading path sees them.

``metadata`` is the contract a model carries (FeatureSpec, label, training window, parity),
``registry`` stores and resolves versions in the BentoML model store, and ``predictor`` runs
an ONNX model with ONNX Runtime. Inference and backtests read models through it;
``kubetrade.onnx_export`` writes them.
"""
