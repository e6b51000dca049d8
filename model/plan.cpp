// placeholder: implemented by its owner (see model/CMakeLists.txt)
