"""A development environment for tests and ``make demo`` only: no image contains it.

Starts real etcd, kube-apiserver, kube-controller-manager and MinIO processes on loopback, and a
development node that stands in for kubelets by running Pods' containers as local processes.
"""
