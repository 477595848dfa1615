# Container images for tests/install (list: tests/install/images.toml).
#   make images                  build the missing images (Debian suites, with mmdebstrap)
#   make images IMAGES_PULL=yes  also the registry-based ones (Ubuntu, Fedora, openSUSE)
#   make images-list             each image, its tag and whether it is present
#   make install-test            tests/install alone
# The test session builds the images its tests need when they are missing, so
# `make test` needs no extra step; `make images` builds them ahead. Images are
# cached in build/install/containers (podman storage of this tree) and tagged with
# a hash of their recipe: an unchanged recipe is not rebuilt.
IMAGES_PULL ?=
IMAGES_ARGS ?=

.PHONY: images images-list install-test

images: deps
	$(PYTHON) -m tests.install.imagebuild $(if $(filter yes,$(IMAGES_PULL)),--pull) $(IMAGES_ARGS)

images-list:
	$(PYTHON) -m tests.install.imagebuild --list

install-test: deps venv
	$(BIN)/python -m pytest tests/install $(PYTEST_ARGS)
