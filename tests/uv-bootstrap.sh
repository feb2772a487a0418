# Sourced by tests/run and the README: puts uv on PATH, installing it into .tools/ if missing.
if ! command -v uv >/dev/null 2>&1; then
    if [ ! -x .tools/bin/uv ]; then
        echo "installing uv into .tools/ (one time)" >&2
        python3 -m venv .tools
        .tools/bin/python -m pip install --quiet uv
    fi
    PATH="$PWD/.tools/bin:$PATH"
    export PATH
fi
