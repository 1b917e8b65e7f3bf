"""Kubernetes manifests (PV, PVC, MPIJob kubeflow.org/v2beta1) for a run. Filled in by the k8s issue."""

from __future__ import annotations

import argparse


def add_manifest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)


def manifest_from_args(args: argparse.Namespace) -> str:
    raise NotImplementedError
