"""The demos: ANN-to-SNN digits classification (:mod:`neurofabric.demos.digits`) and unsupervised
STDP learning of the digits (:mod:`neurofabric.demos.learning`). They use the host library and
install with the ``demo`` extra; nothing in ``neurofabric.host`` imports them."""
