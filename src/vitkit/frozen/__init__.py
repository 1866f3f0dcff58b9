"""Frozen-backbone evaluation: embeddings extracted once and cached (:mod:`.store`), the DINO k-NN classifier
(:mod:`.knn`) and a linear probe written as an ordinary run folder (:mod:`.probe`, :mod:`.head`)."""
