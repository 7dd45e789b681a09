// The Python module nernfast._C. Importing it (after `import torch`) runs the TORCH_LIBRARY
// registrations of scatter.cpp, which define torch.ops.nernfast.*; the module itself only says
// which kernels were compiled. No pybind11: this translation unit compiles in well under a second.
#include <Python.h>

static PyModuleDef nernfast_module = {PyModuleDef_HEAD_INIT, "_C",
                                      "nernfast's C++/CUDA ops, registered as torch.ops.nernfast.*", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&nernfast_module);
  if (m == nullptr) return nullptr;
#ifdef NERNFAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "with_cuda", with_cuda) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
