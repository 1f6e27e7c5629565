// Reading a certificate chain file and putting it in the order TLS sends it.
#pragma once

#include <openssl/types.h>
#include <openssl/x509.h>

#include <filesystem>
#include <string>
#include <vector>

#include "backends/openssl/ossl_ptr.h"

namespace cloister::ossl {

using X509Ptr = Ptr<X509, X509_free>;

// A leaf certificate and the intermediates that TLS sends after it.
struct CertificateChain {
    X509Ptr leaf;
    // Issuer order: the leaf's issuer first, each next one certifying the one before it
    // (RFC 8446 section 4.4.2). Self-signed roots are never included.
    std::vector<X509Ptr> intermediates;
};

// Reads every PEM certificate in file and orders them.
//
// The leaf is the one certificate that issues none of the others. Each next certificate is
// one that issues the previous, by subject and issuer name and, where present, by authority
// and subject key identifier. The chain may stop before a root. The function logs a warning
// when the file lists the chain in another order, for each self-signed root and each
// certificate that is not on the chain (all three are left out), and for a leaf outside its
// validity period. It throws Error(config), with where (the config location) and file in the
// message, when the file cannot be read, contains invalid PEM or DER, contains a private key,
// contains no certificate, or does not contain exactly one leaf, as when an intermediate in
// the middle of the chain is missing. Certificates are created in libctx.
CertificateChain load_certificate_chain(const std::filesystem::path& file, const std::string& where,
                                        OSSL_LIB_CTX* libctx);

// Returns the certificate's subject name in RFC 2253 form, for messages.
std::string subject_text(const X509* certificate);

}  // namespace cloister::ossl
