//! Which gateway a client certificate stands for.
//!
//! A gateway's identity is a DNS name in its certificate's subjectAltName
//! (the PKI recipe in the README also puts it in the subject's CN, which is
//! what Mosquitto's `use_identity_as_username` reads). Only certificates
//! the TLS handshake has already verified against the client CA reach this
//! module: it names, it does not verify.

use rustls::pki_types::CertificateDer;

/// The subjectAltName DNS names of a verified end-entity certificate
/// (empty if it cannot be parsed or has none).
pub fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_certificates_dns_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["gw-a".into(), "gw-a.example".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(names(cert.der()), vec!["gw-a", "gw-a.example"]);
        assert!(names(&CertificateDer::from(vec![1u8, 2, 3])).is_empty());
    }
}
