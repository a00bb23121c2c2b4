"""A Keras model built from a validated config, its input pipeline, its training and evaluation, and the memory
it will need (checked before TensorFlow allocates it). Knows nothing of MLflow."""
