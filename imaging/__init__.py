"""Poster images without Beam: fetched bytes validated and normalised, perceptual hashes,
near-duplicate search over hashes, and the aligned-thumbnail check of a near pair."""
