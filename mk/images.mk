# Container images for tests/install (list: tests/install/images.toml).
#   make images                  build the missing images (Debian suites, with mmdebstrap)
#   make images IMAGES_PULL=yes  also the registry-based ones (Ubuntu, Fedora, openSUSE)
#   make images-list             each image, its tag and whether it is present
#   make install-test            images, then tests/install
# Images are cached in build/install/containers (podman storage of this tree) and
# tagged with a hash of their recipe: an unchanged recipe is not rebuilt.
IMAGES_PULL ?=
IMAGES_ARGS ?=

.PHONY: images images-list install-test

images: deps
	$(PYTHON) images/build.py $(if $(filter yes,$(IMAGES_PULL)),--pull) $(IMAGES_ARGS)

images-list:
	$(PYTHON) images/build.py --list

install-test: venv images
	$(BIN)/python -m pytest tests/install $(PYTEST_ARGS)
