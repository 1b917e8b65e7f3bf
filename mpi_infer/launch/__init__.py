"""Around mpirun: Kubernetes manifests (k8s.py) and the launcher's guard (supervise.py)."""
