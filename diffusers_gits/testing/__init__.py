"""Support for the tests and benchmarks, not used by the package itself (as `torch.testing` or diffusers'
`testing_utils`): an exact Gaussian-mixture model with DDPM- and Flux-protocol pipelines around it (`gaussian_mixture`),
and the digits data (`data`, which needs scikit-learn: `pip install 'diffusers-gits[benchmarks]'`)."""
