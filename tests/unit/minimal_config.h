// The smallest valid config text, shared by the tests that parse configs.
#pragma once

#include <string_view>

namespace cloister::test {

// Lines 1 to 14; tests append tables from line 15 on.
inline constexpr std::string_view kMinimalConfig = R"([[listener]]
address = "127.0.0.1:8443"

[[key]]
name = "rsa"
file = "keys/rsa.key"

[[vhost]]
server-names = ["www.example.test"]
backend = "127.0.0.1:8080"

[[vhost.certificate]]
chain = "certs/rsa.pem"
key = "rsa"
)";

}  // namespace cloister::test
