# Sourced by the demo and test scripts: Open MPI settings for a laptop, a CI box or a container.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# More ranks than cores is fine for a demo or a test; no core binding on shared machines.
export PRTE_MCA_rmaps_default_mapping_policy=${PRTE_MCA_rmaps_default_mapping_policy:-:oversubscribe}
export PRTE_MCA_rmaps_default_binding_policy=${PRTE_MCA_rmaps_default_binding_policy:-none}
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-600}
export PATH="$PWD/.venv/bin:$PATH"
