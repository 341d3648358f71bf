"""Selection: crops by informativeness, scores by utility, top-k per class, coresets."""
