#include "backends/openssl/certificate_chain.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>

#include "backends/openssl/openssl_errors.h"
#include "core/error.h"
#include "core/fd.h"

namespace cloister::ossl {
namespace {

using BioPtr = Ptr<BIO, BIO_free>;

// One block of a PEM file, as PEM_read_bio returns it. The data is cleared before it is freed
// because a misplaced block may hold a private key.
struct PemBlock {
    char* name = nullptr;
    char* header = nullptr;
    unsigned char* data = nullptr;
    long length = 0;

    PemBlock() = default;
    PemBlock(const PemBlock&) = delete;
    PemBlock& operator=(const PemBlock&) = delete;
    PemBlock(PemBlock&&) = delete;
    PemBlock& operator=(PemBlock&&) = delete;
    ~PemBlock() {
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_clear_free(data, static_cast<size_t>(length));
    }
};

// The certificates of one file, in file order, with the names used in messages.
struct ChainFile {
    const std::filesystem::path& path;
    const std::string& where;
    std::vector<X509Ptr> certificates;

    [[nodiscard]] Error error(std::string_view problem) const {
        return Error(ErrorKind::config,
                     fmt::format("{}: certificate chain {}: {}", where, path.string(), problem));
    }
};

// Opens a regular file only. O_NONBLOCK makes opening a FIFO without a writer return at once
// instead of blocking start-up, and reads from a regular file ignore it.
BioPtr open_file(const ChainFile& file) {
    Fd fd(::open(file.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) {
        throw file.error(fmt::format("cannot be read: {}", std::strerror(errno)));
    }
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0) {
        throw file.error(fmt::format("cannot be read: {}", std::strerror(errno)));
    }
    if (!S_ISREG(info.st_mode)) {
        throw file.error("is not a regular file; expected a PEM file");
    }
    BioPtr bio(BIO_new_fd(fd.get(), BIO_CLOSE));
    if (!bio) {
        throw file.error(fmt::format("cannot be read: {}", take_openssl_errors()));
    }
    static_cast<void>(fd.release());  // the BIO closes it
    return bio;
}

// Reads the next PEM block. Returns false at the end of the file.
bool read_block(const ChainFile& file, BIO* bio, PemBlock& block) {
    if (PEM_read_bio(bio, &block.name, &block.header, &block.data, &block.length) == 1) {
        return true;
    }
    const unsigned long last = ERR_peek_last_error();
    if (ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return false;
    }
    throw file.error(fmt::format("invalid PEM: {}", take_openssl_errors()));
}

X509Ptr decode_certificate(const ChainFile& file, const PemBlock& block, OSSL_LIB_CTX* libctx) {
    X509Ptr certificate(X509_new_ex(libctx, nullptr));
    X509* target = certificate.get();
    const unsigned char* cursor = block.data;
    if (!certificate || d2i_X509(&target, &cursor, block.length) == nullptr ||
        cursor != block.data + block.length) {
        throw file.error(fmt::format("certificate {} is not valid DER: {}",
                                     file.certificates.size() + 1, take_openssl_errors()));
    }
    return certificate;
}

// Adds a certificate for each CERTIFICATE block and skips other blocks with a warning. A
// private key is an error: the supervisor reads chain files and must never hold a key.
void add_block(ChainFile& file, const PemBlock& block, OSSL_LIB_CTX* libctx) {
    const std::string_view name(block.name);
    if (name == PEM_STRING_X509 || name == PEM_STRING_X509_OLD) {
        file.certificates.push_back(decode_certificate(file, block, libctx));
        return;
    }
    if (name.find("PRIVATE KEY") != std::string_view::npos) {
        throw file.error(fmt::format(
            "contains a private key (PEM block \"{}\"). Keep keys only in the file of a [[key]]",
            name));
    }
    spdlog::warn("{}: certificate chain {}: skipping PEM block \"{}\", which is not a certificate",
                 file.where, file.path.string(), name);
}

void read_certificates(ChainFile& file, OSSL_LIB_CTX* libctx) {
    BioPtr bio = open_file(file);
    while (true) {
        PemBlock block;
        if (!read_block(file, bio.get(), block)) {
            break;
        }
        add_block(file, block, libctx);
    }
    if (file.certificates.empty()) {
        throw file.error("contains no PEM certificate");
    }
}

bool is_self_signed(X509* certificate) {
    return X509_self_signed(certificate, 0) == 1;
}

// True when issuer's subject and key identifier match subject's issuer and authority key
// identifier. Signatures are not checked: clients verify them.
bool issues(X509* issuer, X509* subject) {
    return issuer != subject && X509_check_issued(issuer, subject) == X509_V_OK;
}

bool issues_any(const ChainFile& file, X509* issuer) {
    return std::any_of(file.certificates.begin(), file.certificates.end(),
                       [issuer](const X509Ptr& other) { return issues(issuer, other.get()); });
}

// Returns the subject names of the certificates at indexes, each in double quotes.
std::vector<std::string> quoted_subjects(const ChainFile& file,
                                         const std::vector<std::size_t>& indexes) {
    std::vector<std::string> subjects;
    subjects.reserve(indexes.size());
    for (const std::size_t index : indexes) {
        subjects.push_back("\"" + subject_text(file.certificates[index].get()) + "\"");
    }
    return subjects;
}

// Returns the index of the leaf: the one certificate that is not self-signed and issues none of
// the others, or a lone self-signed certificate.
std::size_t find_leaf(const ChainFile& file) {
    if (file.certificates.size() == 1) {
        return 0;
    }
    std::vector<std::size_t> candidates;
    for (std::size_t i = 0; i < file.certificates.size(); ++i) {
        X509* certificate = file.certificates[i].get();
        if (!is_self_signed(certificate) && !issues_any(file, certificate)) {
            candidates.push_back(i);
        }
    }
    if (candidates.size() == 1) {
        return candidates.front();
    }
    const std::vector<std::string> subjects = quoted_subjects(file, candidates);
    throw file.error(fmt::format(
        "expected exactly one leaf (a certificate that issues none of the others), found {}{}{}. "
        "A missing intermediate breaks the chain into parts",
        candidates.size(), candidates.empty() ? "" : ": ", fmt::join(subjects, ", ")));
}

// Returns the index of an unused certificate that issues subject and is not self-signed.
std::optional<std::size_t> find_issuer(const ChainFile& file, const std::vector<bool>& used,
                                       X509* subject) {
    for (std::size_t i = 0; i < file.certificates.size(); ++i) {
        X509* candidate = file.certificates[i].get();
        if (!used[i] && !is_self_signed(candidate) && issues(candidate, subject)) {
            return i;
        }
    }
    return std::nullopt;
}

void warn_dropped(const ChainFile& file, X509* certificate, X509* top) {
    const std::string subject = subject_text(certificate);
    if (is_self_signed(certificate) && issues(certificate, top)) {
        spdlog::warn(
            "{}: certificate chain {}: leaving out root certificate \"{}\", which "
            "clients must already trust",
            file.where, file.path.string(), subject);
        return;
    }
    spdlog::warn(
        "{}: certificate chain {}: leaving out certificate \"{}\", which is not on the "
        "chain of the leaf",
        file.where, file.path.string(), subject);
}

void warn_if_reordered(const ChainFile& file, const std::vector<std::size_t>& order) {
    if (std::is_sorted(order.begin(), order.end())) {
        return;
    }
    const std::vector<std::string> subjects = quoted_subjects(file, order);
    spdlog::warn("{}: certificate chain {} is not in issuer order. Sending {}", file.where,
                 file.path.string(), fmt::join(subjects, ", "));
}

std::string time_text(const ASN1_TIME* time) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || ASN1_TIME_print(bio.get(), time) != 1) {
        return "an unreadable time";
    }
    char* data = nullptr;
    const long length = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(length));
}

void warn_if_outside_validity(const ChainFile& file, X509* leaf) {
    const std::string subject = subject_text(leaf);
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        spdlog::warn("{}: certificate chain {}: leaf \"{}\" expired on {}", file.where,
                     file.path.string(), subject, time_text(X509_get0_notAfter(leaf)));
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        spdlog::warn("{}: certificate chain {}: leaf \"{}\" is not valid before {}", file.where,
                     file.path.string(), subject, time_text(X509_get0_notBefore(leaf)));
    }
}

// Returns the file indexes of the chain: the leaf, then each issuer in turn.
std::vector<std::size_t> chain_order(const ChainFile& file, std::vector<bool>& used) {
    std::vector<std::size_t> order{find_leaf(file)};
    used[order.front()] = true;
    while (auto issuer = find_issuer(file, used, file.certificates[order.back()].get())) {
        used[*issuer] = true;
        order.push_back(*issuer);
    }
    return order;
}

}  // namespace

std::string subject_text(const X509* certificate) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio ||
        X509_NAME_print_ex(bio.get(), X509_get_subject_name(certificate), 0, XN_FLAG_RFC2253) < 0) {
        return "(unprintable name)";
    }
    char* data = nullptr;
    const long length = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(length));
}

CertificateChain load_certificate_chain(const std::filesystem::path& file, const std::string& where,
                                        OSSL_LIB_CTX* libctx) {
    ChainFile chain_file{file, where, {}};
    read_certificates(chain_file, libctx);
    std::vector<bool> used(chain_file.certificates.size(), false);
    const std::vector<std::size_t> order = chain_order(chain_file, used);
    X509* top = chain_file.certificates[order.back()].get();
    for (std::size_t i = 0; i < used.size(); ++i) {
        if (!used[i]) {
            warn_dropped(chain_file, chain_file.certificates[i].get(), top);
        }
    }
    warn_if_reordered(chain_file, order);
    warn_if_outside_validity(chain_file, chain_file.certificates[order.front()].get());

    CertificateChain chain;
    chain.leaf = std::move(chain_file.certificates[order.front()]);
    for (std::size_t i = 1; i < order.size(); ++i) {
        chain.intermediates.push_back(std::move(chain_file.certificates[order[i]]));
    }
    return chain;
}

}  // namespace cloister::ossl
