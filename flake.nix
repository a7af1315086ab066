{
  description = "triton_kernels: Triton MoE kernels with MXFP4 weights (noarch kernel, built by kernel-builder)";

  # `nix build` produces build/ (torch-cuda, torch-cpu) from build.toml and torch-ext/ the way
  # kernel-builder does for every kernels-community kernel. Where Nix or the network is missing,
  # `make build` (python -m scripts.build_variants) produces the same tree; see README.md.
  inputs = {
    kernel-builder.url = "github:huggingface/kernel-builder";
  };

  outputs =
    { self, kernel-builder }:
    kernel-builder.lib.genKernelFlakeOutputs {
      inherit self;
      path = ./.;
    };
}
