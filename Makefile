# make demo  - create .venv (locked), then run the main job on the built-in digits data
# make test  - create .venv (locked), lint, then run the test suite
# make lock  - rebuild the environment from the loose requirements and rewrite requirements/lock.txt
# GPU machines: make MXNET=mxnet-cu112==1.9.1 HOROVOD_GPU_OPERATIONS=NCCL demo   (CUDA 11.2, cuDNN 8, NCCL)

PYTHON ?= python3
VENV   ?= .venv
MXNET  ?= mxnet==1.9.1
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip -q --disable-pip-version-check
CONSTRAINTS = requirements/constraints.txt
# Every pip call is constrained by the lock (exact versions); `make lock` rebuilds it from $(CONSTRAINTS).
LOCK   ?= requirements/lock.txt
HOROVOD_GPU_OPERATIONS ?=
HOROVOD_ENV = HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
              HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
              $(if $(HOROVOD_GPU_OPERATIONS),HOROVOD_GPU_OPERATIONS=$(HOROVOD_GPU_OPERATIONS))

.PHONY: env ops demo test lint bench clean lock

env: $(VENV)/.installed

# Our C++ operator and the data pipeline's kernels (resnest_gluon/ops): without a compiler (or libjpeg-turbo's
# headers, for the region JPEG decoder) this warns, and MXNet's standard operators, OpenCV and PIL are used.
# One command builds the three libraries.
OPS_LIB = resnest_gluon/ops/libresnest_ops.so
ops: $(OPS_LIB)

$(OPS_LIB): resnest_gluon/ops/split_attention.cc resnest_gluon/ops/split_attention_cuda.cu resnest_gluon/ops/colour.cc \
		resnest_gluon/ops/affine.cc resnest_gluon/ops/tables.cc resnest_gluon/ops/jpeg_region.cc \
		$(VENV)/.installed
	$(PY) -m resnest_gluon.ops build --optional

$(VENV)/.installed: setup.py requirements/*.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(LOCK) -U "pip<25" wheel "setuptools<70" "cmake<4"
	$(PIP) install -c $(LOCK) "$(MXNET)" -r requirements/base.txt -r requirements/dev.txt
	$(PIP) install -c $(LOCK) --no-deps gluoncv==0.10.5.post0
	$(HOROVOD_ENV) $(PIP) install -c $(LOCK) --no-build-isolation horovod==0.28.1
	$(PIP) install -c $(LOCK) --no-deps -e .
	$(PY) -c "import mxnet, horovod.mxnet, cv2, resnest_gluon; print('environment ready: mxnet', mxnet.__version__)"
	touch $@

demo: env ops
	$(PY) scripts/demo.py

test: env ops lint
	$(PY) -m pytest -q -rs tests  # -rs: each skip and its reason in the summary (the operator tests without a compiler)

lint: env
	$(VENV)/bin/ruff check resnest_gluon tools scripts tests
	$(VENV)/bin/ruff format --check resnest_gluon tools scripts tests

bench: env ops
	$(PY) scripts/benchmark.py

lock:
	rm -rf .venv-lock
	$(MAKE) env VENV=.venv-lock LOCK=$(CONSTRAINTS)
	{ echo "# The exact stack that 'make' installs (every pip call is constrained by this file); made by 'make lock'"; \
	  echo "# from requirements/{base,dev,constraints}.txt in an environment that passed 'make test'."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK): now run 'make clean test' and commit it if the tests pass"

clean:
	rm -rf $(VENV) build *.egg-info $(OPS_LIB) resnest_gluon/ops/libresnest_colour.so
