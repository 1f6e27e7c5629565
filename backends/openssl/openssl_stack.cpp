#include "backends/openssl/openssl_stack.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backends/openssl/key_check.h"
#include "backends/openssl/library_context.h"
#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/session.h"
#include "backends/openssl/vhost_context.h"
#include "core/error.h"

namespace cloister {
namespace {

using ossl::OpensslSession;

// Returns text with bytes outside printable ASCII replaced by '?', for log lines that show
// what a client sent.
std::string printable(std::string_view text) {
    std::string result(text.substr(0, 255));
    for (char& c : result) {
        if (c < 0x20 || c > 0x7e) {
            c = '?';
        }
    }
    return result;
}

// Reseeds the primary DRBG of libctx from the operating system, then the public and private
// DRBGs from it. The pid and the time go in as additional input, so that two children never
// continue from the same state even if the entropy source repeated itself.
void reseed_random(OSSL_LIB_CTX* libctx) {
    const std::array<std::int64_t, 2> input{
        getpid(), std::chrono::steady_clock::now().time_since_epoch().count()};
    const auto* bytes = reinterpret_cast<const unsigned char*>(input.data());
    const std::array<EVP_RAND_CTX*, 3> generators{
        RAND_get0_primary(libctx), RAND_get0_public(libctx), RAND_get0_private(libctx)};
    for (EVP_RAND_CTX* generator : generators) {
        const int prediction_resistance = generator == generators.front() ? 1 : 0;
        if (generator == nullptr || EVP_RAND_reseed(generator, prediction_resistance, nullptr, 0,
                                                    bytes, sizeof(input)) != 1) {
            throw Error(ErrorKind::crypto,
                        "cannot reseed the random generator: " + ossl::take_openssl_errors());
        }
    }
}

// Ends the handshake with alert unrecognized_name (112, RFC 6066 section 3).
int reject_server_name(const OpensslSession& session, const char* server_name, int* alert) {
    if (server_name == nullptr) {
        spdlog::warn("connection {}: rejected the handshake: the client sent no server name",
                     session.connection_id());
    } else {
        spdlog::warn("connection {}: rejected the handshake: no vhost serves \"{}\"",
                     session.connection_id(), printable(server_name));
    }
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

class OpensslStack final : public TlsStack {
  public:
    OpensslStack(const Config& config, const VhostTable& vhosts);

    [[nodiscard]] std::string_view name() const override { return "openssl"; }
    void use_key_client(KeyClient& client) override { library_.provider().key_client = &client; }
    void reseed_after_fork() override;
    void verify_keys() override;
    std::unique_ptr<TlsSession> new_session(int client_fd, std::uint64_t connection_id) override;

  private:
    static int on_server_name(SSL* ssl, int* alert, void* arg);
    int select_vhost(SSL* ssl, int* alert);

    // Declared first, so that it outlives every SSL_CTX and key created in it.
    ossl::LibraryContext library_;
    VhostTable vhosts_;
    std::vector<ossl::VhostContext> contexts_;
    // Vhost of the SSL_CTX that new sessions start with: the default vhost, else the first.
    std::size_t initial_vhost_ = 0;
};

OpensslStack::OpensslStack(const Config& config, const VhostTable& vhosts)
    : vhosts_(vhosts), initial_vhost_(vhosts.default_vhost().value_or(0)) {
    if (config.vhosts.empty()) {
        throw Error(ErrorKind::config, config.source.string() + ": no [[vhost]] is configured");
    }
    std::size_t certificates = 0;
    for (std::size_t i = 0; i < config.vhosts.size(); ++i) {
        contexts_.push_back(ossl::build_vhost_context(config, i, library_.get()));
        SSL_CTX_set_tlsext_servername_callback(contexts_.back().ssl_ctx.get(), on_server_name);
        SSL_CTX_set_tlsext_servername_arg(contexts_.back().ssl_ctx.get(), this);
        certificates += contexts_.back().certificates.size();
    }
    spdlog::info("openssl: {} vhosts with {} certificates ready ({})", contexts_.size(),
                 certificates, OpenSSL_version(OPENSSL_VERSION));
}

void OpensslStack::reseed_after_fork() {
    if (RAND_poll() != 1) {
        throw Error(ErrorKind::crypto, "RAND_poll failed: " + ossl::take_openssl_errors());
    }
    reseed_random(nullptr);
    reseed_random(library_.get());
}

void OpensslStack::verify_keys() {
    KeyClient* client = library_.provider().key_client;
    if (client == nullptr) {
        throw Error(ErrorKind::config, "verify_keys needs a key channel: call use_key_client");
    }
    std::size_t checked = 0;
    for (const ossl::VhostContext& context : contexts_) {
        for (const ossl::ServedCertificate& certificate : context.certificates) {
            ossl::verify_certificate_key(certificate, *client, library_.get());
            ++checked;
        }
    }
    library_.provider().last_scheme = 0;
    spdlog::info("openssl: {} certificate keys match their keys in the key process", checked);
}

std::unique_ptr<TlsSession> OpensslStack::new_session(int client_fd, std::uint64_t connection_id) {
    ossl::SslPtr ssl(SSL_new(contexts_[initial_vhost_].ssl_ctx.get()));
    if (!ssl || SSL_set_fd(ssl.get(), client_fd) != 1) {
        throw Error(ErrorKind::crypto,
                    "cannot create a TLS session: " + ossl::take_openssl_errors());
    }
    SSL_set_accept_state(ssl.get());
    return std::make_unique<OpensslSession>(std::move(ssl), connection_id, library_.provider(),
                                            initial_vhost_);
}

// Runs for every ClientHello, with or without the server_name extension (OpenSSL 1.1.1 and
// later), after the extensions are parsed and before the certificate is chosen.
int OpensslStack::on_server_name(SSL* ssl, int* alert, void* arg) {
    try {
        return static_cast<OpensslStack*>(arg)->select_vhost(ssl, alert);
    } catch (const std::exception& error) {
        spdlog::error("selecting the vhost failed: {}", error.what());
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
}

int OpensslStack::select_vhost(SSL* ssl, int* alert) {
    OpensslSession* session = OpensslSession::from(ssl);
    if (session == nullptr) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    const char* server_name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    std::optional<std::string_view> sni;
    if (server_name != nullptr) {
        sni = server_name;
    }
    const VhostTable::Selection selection = vhosts_.select(sni);
    if (!selection.vhost) {
        return reject_server_name(*session, server_name, alert);
    }
    const std::size_t index = *selection.vhost;
    if (SSL_set_SSL_CTX(ssl, contexts_.at(index).ssl_ctx.get()) == nullptr) {
        spdlog::error("connection {}: cannot switch to vhost {}: {}", session->connection_id(),
                      index, ossl::take_openssl_errors());
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    session->set_vhost(index, server_name != nullptr ? server_name : "");
    return SSL_TLSEXT_ERR_OK;
}

}  // namespace

std::unique_ptr<TlsStack> make_openssl_stack(const Config& config, const VhostTable& vhosts) {
    return std::make_unique<OpensslStack>(config, vhosts);
}

}  // namespace cloister
