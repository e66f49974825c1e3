//! The control plane's certificates and keys, generated fresh for every environment.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// PEM-encoded material for one control plane (all keys ECDSA P-256, PKCS#8).
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_cert: String,
    pub(crate) serving_cert: String,
    pub(crate) serving_key: String,
    pub(crate) admin_cert: String,
    pub(crate) admin_key: String,
    pub(crate) sa_private_key: String,
    pub(crate) sa_public_key: String,
}

fn err(e: rcgen::Error) -> Error {
    Error::other("generating the control plane's certificates", e)
}

/// A CA, an API server serving certificate (127.0.0.1, localhost and the in-cluster
/// names), an admin client certificate in `system:masters`, and a service-account key
/// pair.
pub(crate) fn generate() -> Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "capstan-testenv-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;

    let serving_key = KeyPair::generate().map_err(err)?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        "10.0.0.1".to_owned(),
    ])
    .map_err(err)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &ca).map_err(err)?;

    let admin_key = KeyPair::generate().map_err(err)?;
    let mut admin = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "capstan-testenv-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &ca).map_err(err)?;

    let sa = KeyPair::generate().map_err(err)?;

    Ok(Pki {
        ca_cert: ca.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        admin_cert: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
        sa_private_key: sa.serialize_pem(),
        sa_public_key: sa.public_key_pem(),
    })
}
