# NNCodec 2.1.3 in its own virtualenv (it builds C++ at install and pins numpy<2; never a nernfast dependency).
# Sourced by the comparison scripts: sets NNC to the virtualenv, creating it when missing.
NNC=${NNCODEC_VENV:-../nncodec-venv}
if [ ! -x "$NNC/bin/python" ] || ! "$NNC/bin/python" -c "import nncodec" 2>/dev/null; then
  python3.11 -m venv "$NNC"
  # torchvision's ops must match the torch build (the PyPI CPU pair fails to load them)
  "$NNC/bin/pip" install torch==2.14.1 torchvision==0.29.1 "numpy<2"
  "$NNC/bin/pip" install nncodec==2.1.3
fi
