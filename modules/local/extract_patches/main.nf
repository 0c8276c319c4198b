process EXTRACT_PATCHES {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(tomogram), path(mask), path(regions)
    val settings

    output:
    tuple val(meta), path("${meta.id}_patches.h5"), emit: patches
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    def regions_arg = regions ? "--regions ${regions}" : ''
    """
    subtomo-extract \\
        --tomogram ${tomogram} \\
        --mask ${mask} \\
        ${regions_arg} \\
        --output-dir . \\
        ${settings} \\
        ${args}
    """

    stub:
    """
    touch ${meta.id}_patches.h5
    """
}
