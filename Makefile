# make test / make demo: create .venv if missing, install pinned dependencies, build, run.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
# torch==2.13.0 is the CPU build on disk; a CUDA torch already in the venv is kept as it is.
TORCH_PIN := torch==2.13.0
DEPS    := numpy pytest hypothesis pytest-benchmark ninja setuptools wheel build scikit-learn tqdm matplotlib opacus
STAMP   := $(VENV)/.deps-stamp

.PHONY: venv deps build test demo bench info test-sanitize test-sdist test-cuda-build test-cuda-emu test-cuda-emu-sanitize test-seeds dist clean

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): $(VPY) Makefile
	$(VPY) -m pip install -q --upgrade pip
	@if $(VPY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "keeping the installed CUDA torch"; \
	else \
		$(VPY) -m pip install -q $(TORCH_PIN); \
	fi
	$(VPY) -m pip install -q $(DEPS)
	touch $(STAMP)

deps: $(STAMP)

build: deps
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(VPY) -m pytest -q tests

demo: build
	$(VPY) -m dlkernels.demo --plot demo_loss.png

bench: build
	$(VPY) -m dlkernels.bench --all --models --markdown bench/results/$$($(VPY) -c "import dlkernels.bench as b; print(b.device_slug())").md --plot bench/results/$$($(VPY) -c "import dlkernels.bench as b; print(b.device_slug())").png

# ASan + UBSan build of the CPU extension in .sanitize/ (a copy of the tracked files, so the normal build
# stays), then the test suite under it, less the slow multi-process and property tests.
SANITIZE ?= address,undefined
SANITIZE_TESTS ?= -k "not two_processes and not distributed and not demo and not property and not 2_31"
test-sanitize: deps
	rm -rf .sanitize && mkdir -p .sanitize
	git ls-files | tar -cf - -T - | tar -xf - -C .sanitize
	cd .sanitize && DLKERNELS_SANITIZE=$(SANITIZE) DLKERNELS_CUDA=0 ../$(VPY) setup.py -q build_ext --inplace
	cd .sanitize && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=. \
		../$(VPY) -m pytest -q -p no:cacheprovider -p no:logging tests $(SANITIZE_TESTS)

# The CUDA emulation build (tools/cuda_emu) in .cuda-emu/: csrc/cuda/*.cu compiled as host C++ and run on
# the emulator, CPU tensors taking the ops layer's CUDA branches; then the suite, where the "cpu" device
# means the CUDA kernels, emulated (float16 and bfloat16 included). EMU_SANITIZE=address,undefined runs
# it under ASan + UBSan (make test-cuda-emu-sanitize).
EMU_SANITIZE ?=
EMU_TESTS ?= -k "not two_processes and not distributed and not demo and not property and not 2_31"
test-cuda-emu: deps
	rm -rf .cuda-emu && mkdir -p .cuda-emu
	git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C .cuda-emu
	cd .cuda-emu && DLKERNELS_CUDA_EMU=1 DLKERNELS_SANITIZE=$(EMU_SANITIZE) ../$(VPY) setup.py -q build_ext --inplace
	cd .cuda-emu && $(if $(EMU_SANITIZE),LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1) PYTHONPATH=. \
		../$(VPY) -m pytest -q -p no:cacheprovider -p no:logging tests $(EMU_TESTS)

# (less the whole-model fusion tests too: ResNet-50 through emulated kernels under ASan takes many minutes;
# make test-cuda-emu runs them)
test-cuda-emu-sanitize:
	$(MAKE) test-cuda-emu EMU_SANITIZE=address,undefined \
		EMU_TESTS='-k "not two_processes and not distributed and not demo and not property and not 2_31 and not benchmark_models"'

# The sdist installed into a fresh venv holding only torch, a fast subset of the tests run against it.
test-sdist: deps
	bash tools/test_sdist.sh $(VPY)

# The sdist's CUDA build (torch==2.14.1's CUDA wheels in .venv-cuda, nvcc from /usr/local/cuda) installed
# there, then the build tests and one CPU path of each family against it; no GPU needed.
test-cuda-build: deps
	bash tools/test_cuda_build.sh $(VPY)

# sdist and wheel into dist/ (the wheel is built from the sdist, against the venv's torch)
dist: deps
	$(VPY) -m build --no-isolation

# The seeded tests (every test draws its inputs from the run's seed) over N consecutive seeds from
# SEED0; stops at the first failing seed and prints it. Left out: the multi-process tests, the demo, the
# build tests, the hypothesis property tests (derandomized: their inputs do not follow the seed), and the
# slow opcheck and torch.compile checks of registration and tracing. Not in CI: about 75 s a seed on
# 2 cores (Zen 4).
N ?= 50
SEED0 ?= 1
SEED_TESTS ?= tests -x -p no:cacheprovider --ignore=tests/test_build.py --ignore=tests/test_properties.py \
	-k "not two_processes and not distributed and not demo and not opcheck and not compile"
test-seeds: build
	@for i in $$(seq 0 $$(($(N) - 1))); do s=$$(($(SEED0) + i)); \
		DLKERNELS_TEST_SEED=$$s $(VPY) -m pytest -q $(SEED_TESTS) >/tmp/dlkernels-seed-$$s.log 2>&1 \
			|| { echo "seed $$s failed: /tmp/dlkernels-seed-$$s.log"; exit 1; }; \
		echo "seed $$s: $$(tail -n 1 /tmp/dlkernels-seed-$$s.log)"; done

info: build
	$(VPY) -m dlkernels.info

clean:
	rm -rf build *.egg-info dlkernels/_C*.so
