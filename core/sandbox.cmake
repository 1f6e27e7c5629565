# Process confinement: user switch, chroot, resource limits, namespaces and the seccomp
# allow-lists of each process role. Included from core/CMakeLists.txt.
add_library(cloister_sandbox STATIC
    ${CMAKE_CURRENT_LIST_DIR}/sandbox.cpp
    ${CMAKE_CURRENT_LIST_DIR}/seccomp_policy.cpp)
target_include_directories(cloister_sandbox PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cloister_sandbox
    PUBLIC PkgConfig::SECCOMP
    PRIVATE cloister_config spdlog::spdlog cloister_warnings)
