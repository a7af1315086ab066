"""matmul_ogs: being written."""
