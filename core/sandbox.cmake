# Process confinement: user switch, chroot, resource limits, namespaces and the seccomp
# allow-lists of each process role, and the layers the running daemon applies. Included from
# core/CMakeLists.txt.
add_library(cloister_sandbox STATIC
    ${CMAKE_CURRENT_LIST_DIR}/sandbox.cpp
    ${CMAKE_CURRENT_LIST_DIR}/sandbox_layers.cpp
    ${CMAKE_CURRENT_LIST_DIR}/sandbox_sigsys.cpp
    ${CMAKE_CURRENT_LIST_DIR}/sandbox_spawn.cpp
    ${CMAKE_CURRENT_LIST_DIR}/seccomp_policy.cpp)
target_include_directories(cloister_sandbox PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(cloister_sandbox
    PUBLIC PkgConfig::SECCOMP cloister_config
    PRIVATE spdlog::spdlog cloister_warnings)

# The supervisor and the connection processes apply the sandbox.
target_link_libraries(cloister_core PUBLIC cloister_sandbox)
