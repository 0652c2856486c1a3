"""Networks: the MLP generator (`mlp`), image generators (`image`: conv, DiT, residual MLP),
feature encoders and the MAE (`encoders`), and shared layers (`layers`)."""
