# Nix/NixOS: the package (nix/package.nix), the module (nix/module.nix), flake.nix.
#   make nix-parse   every .nix file parses (Nix only)
#   make nix-test    tests/nix; module evaluation needs nixpkgs' lib: NIXPKGS_LIB, else
#                    ../shared/nixpkgs.lib/lib beside the checkout (skipped, saying so, if neither)
#   make nix-build   build the package        } on a machine with nixpkgs (flakes on);
#   make nix-vm      run the NixOS VM test    } not possible on the project's CI machine
NIX_INSTANTIATE ?= nix-instantiate
NIX ?= nix
NIX_FLAGS ?= --extra-experimental-features 'nix-command flakes'
NIX_SYSTEM ?= x86_64-linux
NIX_FILES = $(shell find . -name '*.nix' -not -path './.*' | sort)

.PHONY: nix-parse nix-test nix-build nix-vm

nix-parse:
	@for f in $(NIX_FILES); do \
		NIX_REMOTE= $(NIX_INSTANTIATE) --store dummy:// --parse "$$f" >/dev/null || exit 1; echo "parsed $$f"; \
	done

nix-test: venv
	$(BIN)/python -m pytest tests/nix $(PYTEST_ARGS)

nix-build:
	$(NIX) $(NIX_FLAGS) build .#default

nix-vm:
	$(NIX) $(NIX_FLAGS) build -L .#checks.$(NIX_SYSTEM).vm
