"""What sits on the encoder beyond a classifier: dense-prediction heads that read the patch tokens as a grid."""
