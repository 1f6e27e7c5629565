#include "backends/openssl/openssl_stack.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/openssl/key_capabilities.h"
#include "backends/openssl/key_check.h"
#include "backends/openssl/library_context.h"
#include "backends/openssl/openssl_errors.h"
#include "backends/openssl/session.h"
#include "backends/openssl/vhost_context.h"
#include "core/alpn.h"
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

// Instantiates the primary, public and private DRBGs of libctx (null: the default context),
// which OpenSSL otherwise creates on first use. Called in the supervisor, so that every
// connection process inherits them and reseed_after_fork only reseeds: instantiating the six
// generators in each connection process cost more CPU than its TLS handshake (callgrind,
// docs/benchmarks.md).
void instantiate_random(OSSL_LIB_CTX* libctx) {
    if (RAND_get0_primary(libctx) == nullptr || RAND_get0_public(libctx) == nullptr ||
        RAND_get0_private(libctx) == nullptr) {
        throw Error(ErrorKind::crypto,
                    "cannot instantiate the random generator: " + ossl::take_openssl_errors());
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
    static int on_alpn(SSL* ssl, const unsigned char** selected, unsigned char* selected_length,
                       const unsigned char* offered, unsigned int offered_length, void* arg);
    int select_protocol(SSL* ssl, const unsigned char** selected, unsigned char* selected_length,
                        std::span<const unsigned char> offered) const;
    static int on_client_hello(SSL* ssl, int* alert, void* arg);
    int prepare_vhost(SSL* ssl, int* alert) const;
    void apply_key_signing(std::size_t vhost, KeyClient& client);

    // Declared first, so that it outlives every SSL_CTX and key created in it.
    ossl::LibraryContext library_;
    VhostTable vhosts_;
    std::vector<ossl::VhostContext> contexts_;
    // Vhost of the SSL_CTX that new sessions start with: the default vhost, else the first.
    std::size_t initial_vhost_ = 0;
    TlsVersion min_version_;
    std::vector<std::vector<std::string>> alpn_;  // VhostConfig::alpn of each vhost
    AlpnMismatch alpn_mismatch_;
    // Per vhost: an RSA key of it cannot sign RSA-PSS, so it serves TLS 1.2 only. Set by
    // verify_keys from the key process's key_info.
    std::vector<bool> tls12_only_;
};

OpensslStack::OpensslStack(const Config& config, const VhostTable& vhosts)
    : vhosts_(vhosts),
      initial_vhost_(vhosts.default_vhost().value_or(0)),
      min_version_(config.tls.min_version),
      alpn_mismatch_(config.tls.alpn_mismatch) {
    if (config.vhosts.empty()) {
        throw Error(ErrorKind::config, config.source.string() + ": no [[vhost]] is configured");
    }
    std::size_t certificates = 0;
    for (std::size_t i = 0; i < config.vhosts.size(); ++i) {
        contexts_.push_back(ossl::build_vhost_context(config, i, library_.get()));
        SSL_CTX_set_tlsext_servername_callback(contexts_.back().ssl_ctx.get(), on_server_name);
        SSL_CTX_set_tlsext_servername_arg(contexts_.back().ssl_ctx.get(), this);
        SSL_CTX_set_client_hello_cb(contexts_.back().ssl_ctx.get(), on_client_hello, this);
        SSL_CTX_set_alpn_select_cb(contexts_.back().ssl_ctx.get(), on_alpn, this);
        alpn_.push_back(config.vhosts[i].alpn);
        certificates += contexts_.back().certificates.size();
    }
    instantiate_random(nullptr);
    instantiate_random(library_.get());
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
    tls12_only_.assign(contexts_.size(), false);
    for (std::size_t i = 0; i < contexts_.size(); ++i) {
        apply_key_signing(i, *client);
    }
}

// Offers the vhost only the schemes its keys can sign, from the key process's key_info.
// Runs in the supervisor before any connection process is forked, so every child inherits
// the limits.
void OpensslStack::apply_key_signing(std::size_t vhost, KeyClient& client) {
    ossl::VhostContext& context = contexts_[vhost];
    std::vector<ossl::KeySchemes> keys;
    for (const ossl::ServedCertificate& certificate : context.certificates) {
        keys.push_back({certificate.key_type, certificate.key_name,
                        client.key_schemes(certificate.key_index)});
    }
    const ossl::VhostSigning signing = ossl::derive_vhost_signing(keys);
    const std::string& name = context.certificates.front().vhost_name;
    if (!signing.sigalgs.empty()) {
        if (SSL_CTX_set1_sigalgs_list(context.ssl_ctx.get(), signing.sigalgs.c_str()) != 1) {
            throw Error(ErrorKind::config,
                        fmt::format("vhost '{}': OpenSSL rejected the signature algorithms {}: {}",
                                    name, signing.sigalgs, ossl::take_openssl_errors()));
        }
        spdlog::info("openssl: vhost '{}' offers the signature schemes its keys can sign: {}",
                     name, signing.sigalgs);
    }
    if (!signing.tls12_only) {
        return;
    }
    if (min_version_ == TlsVersion::tls1_3) {
        throw Error(ErrorKind::config,
                    fmt::format("vhost '{}': key {} cannot sign RSA-PSS, which TLS 1.3 requires "
                                "of RSA keys, and [tls] min-version is 1.3; allow TLS 1.2 or "
                                "use a token with CKM_RSA_PKCS_PSS",
                                name, signing.keys_without_pss));
    }
    tls12_only_[vhost] = true;
    spdlog::warn("openssl: vhost '{}' serves TLS 1.2 only: key {} cannot sign RSA-PSS, which "
                 "TLS 1.3 requires of RSA keys",
                 name, signing.keys_without_pss);
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

// Runs first for every ClientHello, before the protocol version is chosen and before a
// session ticket is decrypted; the servername callback runs after it. A vhost's TLS 1.2 limit
// and its session id context must be set here, because switching the SSL_CTX later changes
// neither the negotiated version nor a resumption already decided.
int OpensslStack::on_client_hello(SSL* ssl, int* alert, void* arg) {
    return static_cast<const OpensslStack*>(arg)->prepare_vhost(ssl, alert);
}

// Binds the sessions of ssl to the vhost: OpenSSL resumes a session (TLS 1.2 ticket or TLS
// 1.3 PSK ticket) only under the session id context it was made with, so a session of one
// vhost leads to a full handshake with the certificate of another. Returns false on failure.
bool bind_sessions_to_vhost(SSL* ssl, std::size_t vhost) {
    const std::string context = fmt::format("cloister vhost {}", vhost);
    return context.size() <= SSL_MAX_SID_CTX_LENGTH &&
           SSL_set_session_id_context(ssl, reinterpret_cast<const unsigned char*>(context.data()),
                                      static_cast<unsigned int>(context.size())) == 1;
}

// Chooses the vhost exactly as select_vhost does, from the same server name, binds the
// session to it and caps the version when that vhost serves TLS 1.2 only. A ClientHello that
// the table rejects is left to the servername callback, which ends it.
int OpensslStack::prepare_vhost(SSL* ssl, int* alert) const {
    const std::optional<std::string_view> sni = ossl::client_hello_server_name(ssl);
    const std::optional<std::size_t> vhost = vhosts_.select(sni).vhost;
    if (!vhost) {
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (!bind_sessions_to_vhost(ssl, *vhost)) {
        const OpensslSession* session = OpensslSession::from(ssl);
        spdlog::error("connection {}: cannot set the session id context of vhost {}: {}",
                      session != nullptr ? session->connection_id() : 0, *vhost,
                      ossl::take_openssl_errors());
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (*vhost < tls12_only_.size() && tls12_only_[*vhost]) {
        SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
    }
    return SSL_CLIENT_HELLO_SUCCESS;
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
        session->set_sni(server_name);
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

// Splits the client's ALPN list (RFC 7301 section 3.1: each name with a one-byte length).
std::vector<std::string> parse_alpn_list(std::span<const unsigned char> wire) {
    std::vector<std::string> names;
    std::size_t offset = 0;
    while (offset < wire.size()) {
        const std::size_t length = wire[offset];
        if (length == 0 || offset + 1 + length > wire.size()) {
            break;  // libssl has already rejected such a list; nothing more is read
        }
        names.emplace_back(reinterpret_cast<const char*>(wire.data() + offset + 1), length);
        offset += 1 + length;
    }
    return names;
}

// Runs when the client offered ALPN, after the SNI callback chose the vhost (OpenSSL 3.0
// handles ALPN after the ClientHello extensions and the servername callback).
int OpensslStack::on_alpn(SSL* ssl, const unsigned char** selected, unsigned char* selected_length,
                          const unsigned char* offered, unsigned int offered_length, void* arg) {
    try {
        return static_cast<const OpensslStack*>(arg)->select_protocol(
            ssl, selected, selected_length, std::span(offered, offered_length));
    } catch (const std::exception& error) {
        spdlog::error("selecting the ALPN protocol failed: {}", error.what());
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
}

// Returns SSL_TLSEXT_ERR_OK with selected pointing into offered (libssl copies it),
// SSL_TLSEXT_ERR_NOACK for no protocol, or SSL_TLSEXT_ERR_ALERT_FATAL, which libssl turns
// into alert no_application_protocol (120).
int OpensslStack::select_protocol(SSL* ssl, const unsigned char** selected,
                                  unsigned char* selected_length,
                                  std::span<const unsigned char> offered) const {
    const OpensslSession* session = OpensslSession::from(ssl);
    if (session == nullptr) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    const std::vector<std::string>& served = alpn_.at(session->vhost_index());
    const std::vector<std::string> names = parse_alpn_list(offered);
    const AlpnSelection selection = select_alpn(served, names, alpn_mismatch_);
    if (selection.reject) {
        spdlog::warn("connection {}: rejected the handshake: the client offered ALPN {}, and "
                     "the vhost serves only {}",
                     session->connection_id(), describe_alpn(names), describe_alpn(served));
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (selection.protocol.empty()) {
        if (!served.empty()) {
            spdlog::info("no ALPN protocol agreed: the client offered {}, and the vhost serves {}",
                         describe_alpn(names), describe_alpn(served));
        }
        return SSL_TLSEXT_ERR_NOACK;
    }
    std::size_t offset = 0;
    for (const std::string& name : names) {
        if (name == selection.protocol) {
            *selected = offered.data() + offset + 1;
            *selected_length = static_cast<unsigned char>(name.size());
            return SSL_TLSEXT_ERR_OK;
        }
        offset += 1 + name.size();
    }
    return SSL_TLSEXT_ERR_NOACK;
}

}  // namespace

std::unique_ptr<TlsStack> make_openssl_stack(const Config& config, const VhostTable& vhosts) {
    return std::make_unique<OpensslStack>(config, vhosts);
}

}  // namespace cloister
