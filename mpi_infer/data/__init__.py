"""The dataset side: the YAML text (yamltext.py), the ECVL YAML model (dataset.py), shard descriptors
(worklist.py), the partition rule (partition.py), the split tool's YAML parts (parts.py) and synthetic datasets
(synth.py)."""
