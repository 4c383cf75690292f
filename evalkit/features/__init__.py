"""Feature extractors and the content-addressed feature store.

Every network that turns images into features (Inception pool3 and logits, CLIP image
embeddings, DINOv2, VGG16) is a :class:`~evalkit.features.base.FeatureExtractor` with a
fingerprint of everything that changes its output. A run's metrics ask one shared
:class:`~evalkit.features.store.FeatureProvider` for features, so each network runs at most
once per image however many metrics use it, and the features are kept in a
:class:`~evalkit.features.store.FeatureStore` addressed by (image content, extractor
fingerprint): a rerun, a new metric on an old run, the CI gate and a sweep reuse them.
"""
