"""``kubetrade.serving``: the inference component, one ONNX model behind BentoML and NATS.

The BentoML service (``service``) answers HTTP predictions and runs the NATS bridge (``bridge``)
that turns candles from the bus into signals with the core's ``kubetrade.signals`` pipeline.
``kubetrade worker inference`` (``kubetrade.cli``) starts it; the operator renders its Deployment.
It imports the core and no other component.
"""
