# Build rules shared by the CardioShape scripted modules and the cardiocore back-end.
#
# A module folder <M>/ holds <M>.py, Resources/UI/<M>.ui, Resources/Icons/<M>.png and a
# CMakeLists.txt of one line:
#
#   cardioshape_add_scripted_module(<M>)
#
# which builds the module with Slicer's macro and registers its Python test.

function(cardioshape_add_scripted_module module_name)
  set(MODULE_PYTHON_SCRIPTS ${module_name}.py)
  set(MODULE_PYTHON_RESOURCES
    Resources/Icons/${module_name}.png
    Resources/UI/${module_name}.ui
    )
  slicerMacroBuildScriptedModule(
    NAME ${module_name}
    SCRIPTS ${MODULE_PYTHON_SCRIPTS}
    RESOURCES ${MODULE_PYTHON_RESOURCES}
    WITH_GENERIC_TESTS
    )
  if(BUILD_TESTING)
    # <M>Test.runTest() runs the same scenarios as the pytest suite, inside real Slicer.
    slicer_add_python_unittest(SCRIPT ${module_name}.py)
  endif()
endfunction()

function(cardioshape_install_backend)
  set(backend_dir ${CMAKE_CURRENT_SOURCE_DIR}/cardiocore)
  file(GLOB_RECURSE backend_files RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${backend_dir}/*.py)
  ctkMacroCompilePythonScript(
    TARGET_NAME CardioShapeBackend
    SCRIPTS "${backend_files}"
    RESOURCES ""
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    )
  # Bundled resources found by cardiocore at <site>/Resources (see cardiocore.resources).
  install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/Resources/Models ${CMAKE_CURRENT_SOURCE_DIR}/Resources/SampleData
    DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources
    COMPONENT RuntimeLibraries
    OPTIONAL
    )
endfunction()
