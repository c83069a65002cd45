#!/usr/bin/env bash
# Packs what benchmarks/gpu.py needs on a GPU machine that has Python 3.12 and PyTorch but no
# Ray, Optuna or MLflow and no network (such as the machines lent to this project), into
# .gpudeps/ (git-ignored): the packages as one xz tarball (Ray's binaries stripped, its Java jars
# and the libraries kdsearch does not use left out: the Ray wheel alone is 79 MB), Fashion-MNIST,
# and run.sh, which unpacks both there and runs gpu.py. About 59 MiB; packing takes ~5 minutes.
#   bash benchmarks/carry_to_gpu.sh      # here;   then there: OUT=<results folder> bash .gpudeps/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpudeps/" .git/info/exclude 2>/dev/null || echo "/.gpudeps/" >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$work/wheels" "ray[tune]==2.60.0" "optuna==5.0.0" "mlflow==3.17.2"
# What the GPU machine already has (its own versions stay in use); the rest is unpacked into site/.
have="absl|aiohttp|aiosignal|anyio|attrs|certifi|charset|click|cloudpickle|contourpy|cycler|filelock|fonttools|frozenlist|fsspec|grpcio|h11|idna|jinja2|joblib|kiwisolver|markupsafe|matplotlib|msgpack|multidict|narwhals|numpy|packaging|pandas|pillow|propcache|protobuf|pyarrow|pyparsing|python_dateutil|pyyaml|PyYAML|requests|scikit_learn|scipy|six|threadpoolctl|tqdm|typing_extensions|urllib3|werkzeug|yarl|zipp|aiohappyeyeballs|annotated_doc|httpx|httpcore|markdown|psutil|wrapt|tabulate|safetensors|onnx|prometheus|rich|pygments|mdurl|markdown_it"
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do
    name=$(basename "$wheel")
    [[ "$name" =~ ^($have)- ]] && continue
    unzip -qo "$wheel" -d "$work/site"
done
rm -rf "$work"/site/ray/{jars,rllib,llm,serve} "$work"/site/mlflow/server/js
find "$work"/site/ray/dashboard/client/build -name "*.map" -delete 2>/dev/null || true
strip --strip-unneeded "$work"/site/ray/_raylet.so "$work"/site/ray/core/src/ray/raylet/raylet "$work"/site/ray/core/src/ray/gcs/gcs_server
mkdir -p .gpudeps "$work/fm"
tar cf - -C "$work/site" . | xz -9 -T2 > .gpudeps/site312.tar.xz
fm=$(dpkg -L dataset-fashion-mnist 2>/dev/null | grep -m1 "train-images-idx3-ubyte.gz" | xargs dirname)
for f in "$fm"/*-ubyte.gz; do zcat "$f" > "$work/fm/$(basename "$f" .gz)"; done
tar cf - -C "$work/fm" . | xz -9 -T2 > .gpudeps/fm.tar.xz
cat > .gpudeps/run.sh <<'RUN'
#!/usr/bin/env bash
# On the GPU machine: unpack the carried packages and Fashion-MNIST, then run benchmarks/gpu.py (results in $OUT).
set -u
cd "$(dirname "$0")/.."
mkdir -p /tmp/site /tmp/fm "$OUT/results"
tar xJf .gpudeps/site312.tar.xz -C /tmp/site && tar xJf .gpudeps/fm.tar.xz -C /tmp/fm || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi -L
python3 benchmarks/gpu.py --data-dir /tmp/fm --out "$OUT/results" --parts ${PARTS:-train profile sweeps} 2>&1 | tee "$OUT/log.txt" | tail -c 9000
RUN
du -sh .gpudeps
