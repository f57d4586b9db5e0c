"""The `tf_netvlad` command line: `main` (entry point and dispatch), `flags` (the flags several
subcommands share) and one module per group of subcommands, each holding its flags beside its
handlers: `demo`, `train`, `model`, `evaluate`, `export`, `retrieval`."""
