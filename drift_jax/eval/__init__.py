"""Evaluation: point-cloud metrics (`points`: energy distance and its floor, MMD, sliced
Wasserstein), image metrics (`images`: Frechet distance, precision/recall, class accuracy)
and the classifier whose features they use (`classifier`)."""
