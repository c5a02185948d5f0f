#!/usr/bin/env bash
# Prepare what a run on the offline GPU machine needs (issue 7), in two git-ignored folders of the repo:
#   .whl/       wheels of the packages that machine lacks (Python 3.12, x86-64), collected with the
#               workplace's wheelhouse script (its path is the first argument)
#   .gpu/data/  the offline data copies: the CIFAR-10 JPEG copy and the CelebA 6k subset pre-cropped to
#               64x64 (scripts/precrop_celeba.py) so that both fit the 64 MiB transfer limit
# Usage: scripts/prepare_gpu_carry.sh /path/to/wheelhouse.sh   (with DDPM_DATA_ROOT set to the offline copies)
set -euo pipefail
cd "$(dirname "$0")/.."
wheelhouse=${1:?usage: $0 /path/to/wheelhouse.sh}
: "${DDPM_DATA_ROOT:?set DDPM_DATA_ROOT to the folder holding cifar10/ and celeba/}"
PYTHON=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .gitignore && grep -qx '/.gpu/' .gitignore
"$wheelhouse" .whl papermill jupytext ipykernel nbclient nbformat nbconvert pytorch-fid mlxtend diffusers \
  importlib_metadata lazy-importer
mkdir -p .gpu/data/cifar10 .gpu/data/celeba
cp "$DDPM_DATA_ROOT"/cifar10/cifar10_jpegbytes_{train,test}.npz .gpu/data/cifar10/
"$PYTHON" scripts/precrop_celeba.py --data-root "$DDPM_DATA_ROOT" --out .gpu/data/celeba/celeba6k_64.npz 2>/dev/null
du -sh .whl .gpu/data | cat
echo "carry: [\".whl\", \".gpu\"]  (together they must stay under 64 MiB with the working tree)"
