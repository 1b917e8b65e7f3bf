"""The tasks a run can score: segmentation and classification. Each owns its head (what the network's raw
output means), its per-image scoring and columns, and its aggregate metrics; the MPI job only moves records."""
